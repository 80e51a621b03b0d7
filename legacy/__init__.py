"""The old platform's PHP price helper (priceHelper.php) and its exact Python port."""

from legacy.price_helper import (
    InvalidArgumentError,
    calculate_adjusted_cpc,
    is_numeric,
    php_compare,
    php_empty,
    php_round,
    validate_bid_data,
)

__all__ = [
    "InvalidArgumentError",
    "calculate_adjusted_cpc",
    "is_numeric",
    "php_compare",
    "php_empty",
    "php_round",
    "validate_bid_data",
]
