"""HTML reports people read: offline pages with charts (plotly, inlined) from Jinja templates."""
