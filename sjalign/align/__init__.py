"""Alignment maps: streaming moments, ridge / lstsq / orthogonal Procrustes, map files."""

from sjalign.align.mapfile import check_source, load_map, map_direction, save_map
from sjalign.align.maps import (
    DEFAULT_LAMBDA,
    METHODS,
    AlignmentMap,
    IllConditionedWarning,
    choose_lambda,
    fit_map,
    map_from_moments,
    pseudo_inverse,
    shuffled_map,
)
from sjalign.align.moments import Moments, Standardised, accumulate

__all__ = [
    "DEFAULT_LAMBDA", "METHODS", "AlignmentMap", "IllConditionedWarning", "Moments", "Standardised",
    "accumulate", "check_source", "choose_lambda", "fit_map", "load_map", "map_direction", "map_from_moments", "pseudo_inverse",
    "save_map", "shuffled_map",
]
