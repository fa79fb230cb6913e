"""What every part of the rack imports: models, the provider contract, errors, config, logging."""

__version__ = "0.1.0"
