"""(being written)"""


def routes(engine, templates) -> list:
    return []
