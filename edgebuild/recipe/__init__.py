"""Recipes: YAML in, validated and typed `Recipe` out, with every error located."""

from edgebuild.recipe.load import load_recipe
from edgebuild.recipe.model import Recipe, Target

__all__ = ["Recipe", "Target", "load_recipe"]
