"""Training entry points: the LightningCLI behind ``arrcoc fit|validate|test|predict``."""
