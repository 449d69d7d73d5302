from .launch import build_runner, check_data_paths, prepare_config

__all__ = ['build_runner', 'check_data_paths', 'prepare_config']
