"""Import every moe2 module (CI). Run it in a base install (``pip install -e .``, no extras) too:
extras are imported late, so every module must import without them."""

import importlib
import pkgutil
import sys

bad = []
mods = []
for pkg in ("moe2", "moe2.pipelines", "moe2.export"):
    p = importlib.import_module(pkg)
    mods += [m.name for m in pkgutil.walk_packages(p.__path__, pkg + ".")]
for name in mods:
    try:
        importlib.import_module(name)
    except Exception as exc:  # report all failures at once
        bad.append(f"{name}: {exc!r}")
if bad:
    raise SystemExit("modules that fail to import:\n" + "\n".join(bad))
print(f"all {len(mods)} moe2 modules import ({sys.prefix})")
