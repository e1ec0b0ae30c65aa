"""The `crmflow` command line. Each sub-module owns one command group; `main` wires them together."""
