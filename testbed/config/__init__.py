"""The two files a user edits, ``inventory.yaml`` and ``experiment.yaml``: one import for both.

A package of four modules, each with one concern:

- ``yamlfile``: YAML parsed into plain data with the line of every dotted key;
- ``checks``: the check kit (``_Reader`` and its converters) that turns that data into values,
  raising :class:`~testbed.errors.ConfigError` naming file, line, key and what was expected;
- ``inventory``: the inventory's schema and ``load_inventory`` (transport settings checked by
  ``nodes.transport_settings``, the rules the boards apply);
- ``experiment``: the experiment's schema, ``load_experiment``, ``check_compatible`` and
  ``with_overrides``.

This module only re-exports what callers use (``from testbed.config import load_inventory``);
it must hold no rule of its own. Nothing here touches a board, the network, a broker or a
dataset.
"""
from __future__ import annotations

from testbed.config.experiment import (DATASETS, DEFAULT_FASHION_MNIST_PATH, FAULT_KINDS, MERGE, MODEL_FAMILIES,
                                       PARTITION_METHODS, QUANTIZE, SPLIT_OBJECTIVES, DatasetSpec, Experiment,
                                       FaultSpec, ModelSpec, PartitionSpec, RunSpec, TrainSpec, check_compatible,
                                       load_experiment, with_overrides)
from testbed.config.inventory import (BOARD_ENVS, BROKER_MODES, DEFAULT_KNOWN_HOSTS, SshSpec, COMPRESSIONS, CONNECTS, DEFAULT_WORKDIR, ENCODINGS,
                                      ENERGY_METERS, KINDS, ROLES, RUNTIMES, TRANSPORTS, BoardSpec, BrokerSpec, EnergySpec,
                                      Inventory, LinkSpec, TransportSpec, load_inventory)

__all__ = [
    "ROLES", "KINDS", "CONNECTS", "RUNTIMES", "ENERGY_METERS", "BROKER_MODES", "TRANSPORTS", "ENCODINGS",
    "COMPRESSIONS", "DEFAULT_WORKDIR", "BOARD_ENVS", "DEFAULT_KNOWN_HOSTS", "SshSpec", "EnergySpec",
    "DATASETS", "MODEL_FAMILIES", "PARTITION_METHODS", "SPLIT_OBJECTIVES", "QUANTIZE", "FAULT_KINDS", "MERGE",
    "DEFAULT_FASHION_MNIST_PATH",
    "BrokerSpec", "BoardSpec", "TransportSpec", "LinkSpec", "Inventory",
    "DatasetSpec", "ModelSpec", "TrainSpec", "PartitionSpec", "RunSpec", "FaultSpec", "Experiment",
    "load_inventory", "load_experiment", "check_compatible", "with_overrides",
]
