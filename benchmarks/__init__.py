"""Scripts that measure speed and quality and write JSON results (`minicpm bench`)."""

from minicpm_suite import require_own_packages

SUITE_PACKAGE = True
require_own_packages("runtime")
