"""Maps the product's top-level folders into the one `vlmedge` import namespace.

pyproject.toml's static `package-dir` cannot list subpackages discovered inside each mapped folder, so the
mapping is computed here; everything else about the package lives in pyproject.toml.
"""
from setuptools import find_packages, setup

FOLDERS = {
    "vlmedge": "vlmedge",
    "vlmedge.compression": "compression",
    "vlmedge.models": "models",
    "vlmedge.export": "export",
    "vlmedge.runtime": "runtime",
    "vlmedge.pipelines": "pipelines",
    "vlmedge.calibration": "calibration",
    "vlmedge.jetson": "jetson",
    "vlmedge.bench": "bench",
}

packages, package_dir = [], {}
for name, folder in FOLDERS.items():
    package_dir[name] = folder
    packages.append(name)
    for sub in find_packages(folder):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"vlmedge.models": ["reference/*/*", "reference/*/glimpse/*"], "vlmedge.pipelines": ["python/*.py"],
                  "vlmedge.jetson": ["deploy/*"]},
    include_package_data=True,
)
