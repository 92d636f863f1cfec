"""Sphinx configuration of the cpnn documentation (myst-nb, autosummary, numpydoc via napoleon)."""

from __future__ import annotations

import os

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
# links into the scverse, torch, numpy and pandas docs; an offline build (CI: CPNN_DOCS_OFFLINE=1)
# cannot fetch their inventories and builds without the links
if not os.environ.get("CPNN_DOCS_OFFLINE"):
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
        "spatialdata": ("https://spatialdata.scverse.org/en/stable/", None),
        "torch": ("https://pytorch.org/docs/stable/", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "pandas": ("https://pandas.pydata.org/docs/", None),
    }
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
