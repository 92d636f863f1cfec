"""Sphinx configuration of the cpnn documentation (myst-nb, autosummary, numpydoc via napoleon)."""

from __future__ import annotations

import cpnn

project = "cpnn"
author = "cpnn developers"
copyright = "2026, cpnn developers"
release = cpnn.__version__
version = cpnn.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "matplotlib.sphinxext.mathmpl",  # maths rendered at build time: the pages need no network
]
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
# notebooks are executed by CI (pytest --nbmake) and committed with their outputs
nb_execution_mode = "off"
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "generated/.gitkeep", "**.ipynb_checkpoints", "README.md", "notebooks/README.md"]
html_theme = "sphinx_book_theme"
html_title = "cpnn"
html_theme_options = {"repository_url": "https://github.com/cpnn-dev/cpnn", "use_repository_button": True}
suppress_warnings = ["myst.header"]
