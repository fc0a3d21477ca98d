import pytest

from loglatent.hosts import normalise_host


@pytest.mark.parametrize("name", ["host-a", "HOST-A", "host-a.example.net", "Host-A.Example.Net.", " host-a "])
def test_spellings_fold_to_one_host(name: str) -> None:
    assert normalise_host(name) == "host-a"


def test_domain_kept_when_configured() -> None:
    assert normalise_host("HOST-A.example.net", strip_domain=False) == "host-a.example.net"


@pytest.mark.parametrize("address", ["10.0.0.1", "2001:db8::1", "[2001:db8::1]"])
def test_ip_addresses_are_kept_whole(address: str) -> None:
    assert normalise_host(address) == address.lower()
