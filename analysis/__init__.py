"""Reading sweeps and runs back: the HTML report (`sdexp report`, plotly charts). Installed with sdexp."""
