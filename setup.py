"""Build of runcov's optional C extension; the project's metadata is in pyproject.toml.

``runcov.tracing._accel`` holds the tracing cores' recording callbacks and the span processor's
per-request path in C. It is optional: where it cannot be compiled, runcov does the same work in
Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "runcov.tracing._accel",
            sources=["src/runcov/tracing/_accel.c"],
            optional=True,
        )
    ]
)
