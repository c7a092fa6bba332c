"""Stand-in for the Rust extension ``bastion._native``; never the module that runs when it is built.

Python's import system tries extension modules before source files, so with the extension built
(``_native.abi3.so`` beside this file, by ``make setup``) this file is never executed; its types are
in ``_native.pyi``. It exists for two reasons: import-linter (grimp reads only ``.py`` files) can then
see the module and enforce the "native-home" contract (only ``bastion.native`` imports it), and an
import without the build fails with the fix instead of a bare ModuleNotFoundError.
"""

raise ImportError("bastion's Rust extension (bastion._native) is not built; build it with `make setup`")
