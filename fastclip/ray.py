"""fastclip on Ray Data: `from fastclip.ray import ImageEmbedder, TextEmbedder, embed_images, embed_texts`.

The implementation lives in the fastclip.bulk.ray package (this module only names it); see its doc and README
"Scale out with Ray". Needs the `ray` extra (`pip install ".[ray]"` in the checkout); Ray itself is imported
only when used.
Inside this module `import ray` is an absolute import and finds the real Ray package, not this file.
"""

from __future__ import annotations

from .bulk import ray as _impl
from .bulk.ray import *  # the public names, listed once in fastclip.bulk.ray.__all__

__all__ = list(_impl.__all__)
