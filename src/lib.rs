//! Integration tests and examples of robust live in tests/ and examples/.
