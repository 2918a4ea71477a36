"""`erbnn train` / `erbnn eval` (compatibility module): the code lives in erbnn_ext.training."""
from .training import *  # noqa: F401,F403
from .training import __all__  # noqa: F401
from .training.args import DEFAULTS, RECIPE_KEYS  # noqa: F401
