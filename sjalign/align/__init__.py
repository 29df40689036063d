"""Alignment maps: pairing by state id, streaming moments, ridge / lstsq / orthogonal Procrustes, map files."""

from sjalign.align.mapfile import check_encoder, check_pair, check_source, fitted_on, load_map, map_direction, save_map
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
from sjalign.align.streaming import PairedRows, fit_map_streaming, pair_rows, stream_moments

__all__ = [
    "DEFAULT_LAMBDA", "METHODS", "AlignmentMap", "IllConditionedWarning", "Moments", "PairedRows", "Standardised",
    "accumulate", "check_encoder", "check_pair", "check_source", "fitted_on", "choose_lambda", "fit_map", "fit_map_streaming", "load_map", "map_direction",
    "map_from_moments", "pair_rows", "pseudo_inverse", "save_map", "shuffled_map", "stream_moments",
]
