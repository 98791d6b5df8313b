"""Released weights (one folder per release, each with its ``manifest.json``). A package only
so a non-editable install ships the folders ``defense`` and ``purify`` load (setup.cfg's
``package_data``)."""
