from concurrent.futures import ThreadPoolExecutor

from mriseg.cache import LRUCache


def test_least_recently_used_goes_first():
    cache = LRUCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2


def test_bounded_under_concurrent_use():
    cache = LRUCache(max_entries=5)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cache.put(i, i), range(1000)))
    assert len(cache) == 5
