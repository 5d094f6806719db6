"""Reading sweeps and runs back: the HTML report (`sdexp report`), SVG charts. Installed with sdexp."""
