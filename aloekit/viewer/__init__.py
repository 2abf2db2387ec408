"""A read-only web viewer for runs, conversation trees and evaluation reports."""

from aloekit.viewer.render import tree_page
from aloekit.viewer.server import build_server

__all__ = ["build_server", "tree_page"]
