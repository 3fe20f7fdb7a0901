"""kubenas: Kubernetes-native neural architecture search.

The top-level package is the shared core that every image imports. It must
import without torch, redis or kubernetes; those live at the edges
(`kubenas.nn`, `kubenas.training` and the image packages).
"""

__version__ = "0.1.0"
