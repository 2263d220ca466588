"""Adapters around the ML toolchains. Nothing here is imported on the planning path
except `versions`, which reads package metadata without importing the packages."""
