"""Reading the pages that show events as a browser shows them."""

import re
from html import unescape


def row_words(html: str) -> list[str]:
    """What each row of the Events page says happened (its summary, not the data behind it), top to bottom."""
    cells = re.findall(r'<td class="data">(.*?)</td>', html, flags=re.S)
    return [unescape(re.sub(r"<code>.*?</code>|<[^>]+>", "", cell, flags=re.S)).strip() for cell in cells]
