"""edgebuild: declarative, content-hashed builds of vision-model artifacts for edge devices."""

__version__ = "0.1.0"
