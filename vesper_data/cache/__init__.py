"""The VSPR binary token cache (Rust byte-compatible v1, plus Vesper's compact v2): layout, writer, reader."""

from vesper_data.cache.format import (HEADER_SIZE, MAGIC, VERSION_COMPACT, VERSION_V1, CacheHeader, cache_name,
                                      idx_path, path_hash, sidecar_path)
from vesper_data.cache.info import cache_info
from vesper_data.cache.reader import TokenCache
from vesper_data.cache.writer import BuiltCache, CacheWriter, build_cache

__all__ = ["BuiltCache", "CacheHeader", "CacheWriter", "HEADER_SIZE", "MAGIC", "TokenCache", "VERSION_COMPACT",
           "VERSION_V1", "build_cache", "cache_info", "cache_name", "idx_path", "path_hash", "sidecar_path"]
