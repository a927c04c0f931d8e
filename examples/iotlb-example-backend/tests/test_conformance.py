"""Run the iotlb plugin conformance kit against ExampleDma (``pytest tests/``)."""
from iotlb.testing import BackendConformance

from iotlb_example_backend import ExampleDma


class TestExampleDma(BackendConformance):
    def make_backend(self):
        return ExampleDma(nas=2)


class TestExampleDmaOneAS(BackendConformance):
    def make_backend(self):
        return ExampleDma()
