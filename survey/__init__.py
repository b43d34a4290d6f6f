"""Paper corpus, retrieval index, survey document, citations and export (MiniCPM4-Survey)."""

from minicpm_suite import require_own_packages

SUITE_PACKAGE = True
require_own_packages("runtime")
