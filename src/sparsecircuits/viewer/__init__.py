"""The circuit viewer: a local, read-only web app (`sparsecircuits view`) and circuit exports (HTML, SVG)."""
