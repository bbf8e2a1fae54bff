"""tests of the benchmarks and the chaos run's fakes"""
