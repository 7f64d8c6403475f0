"""Helpers the tests share: real servers on 127.0.0.1:0 and throwaway databases."""
