"""Reports a person reads: figures (``plots``), self-contained HTML (``html``) and each command's page (``pages``)."""
