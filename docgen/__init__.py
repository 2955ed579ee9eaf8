"""Generators of slackq's docs: the job contract and the configuration table.

    python -m docgen            write every generated file under docs/
    python -m docgen --check    exit 1 naming each file that is not what the code generates

A development tool, like `harness/` and `bench/`: it is not installed with the slackq package
(pyproject's `packages.find` lists `slackq`, `producers` and `worker` only) and not copied into the
Docker image. It imports the apps it documents (`producers`, `worker`); nothing imports it.
"""
