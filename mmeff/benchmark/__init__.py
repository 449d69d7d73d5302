from .complexity import complexity_table, count_macs, count_params

__all__ = ['complexity_table', 'count_macs', 'count_params']
