"""The provider contract and the registry of its implementations."""

from shared.provider.contract import AppsAPI, ProcessesAPI, Provider, SystemAPI
from shared.provider.registry import PROVIDERS, load_provider

__all__ = ["PROVIDERS", "AppsAPI", "ProcessesAPI", "Provider", "SystemAPI", "load_provider"]
