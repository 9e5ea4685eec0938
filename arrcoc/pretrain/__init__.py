"""The embedded tiny preset's own pretraining: ``arrcoc pretrain-encoder`` (:mod:`arrcoc.pretrain.encoder`)
and ``arrcoc pretrain-lm`` (:mod:`arrcoc.pretrain.lm`). Their outputs ship in ``arrcoc/presets/``."""
