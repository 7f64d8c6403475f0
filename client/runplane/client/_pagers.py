"""Pagers for `list_runs`, sync and async, following `next_page_token` lazily.

Like the GAPIC pagers: iterate a pager for runs across every page, or call
`pages()` for whole pages (with each page's store revision). Nothing is sent
until iteration starts, and each page is fetched only when needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from runplane.client._models import Run, RunPage
from runplane.client._requests import RunListing, UnaryCall
from runplane.v1 import run_service_pb2

PageCall = UnaryCall[run_service_pb2.ListRunsResponse, RunPage]


class RunPager:
    """Runs matching a `Client.list_runs` query, across pages."""

    def __init__(self, listing: RunListing, call: Callable[[PageCall], RunPage]) -> None:
        self._listing = listing
        self._call = call

    def pages(self) -> Iterator[RunPage]:
        page = self._call(self._listing.page(""))
        yield page
        while page.next_page_token:
            page = self._call(self._listing.page(page.next_page_token))
            yield page

    def __iter__(self) -> Iterator[Run]:
        for page in self.pages():
            yield from page.runs


class AsyncRunPager:
    """Runs matching an `AsyncClient.list_runs` query, across pages: use `async for`."""

    def __init__(self, listing: RunListing, call: Callable[[PageCall], Awaitable[RunPage]]) -> None:
        self._listing = listing
        self._call = call

    async def pages(self) -> AsyncIterator[RunPage]:
        page = await self._call(self._listing.page(""))
        yield page
        while page.next_page_token:
            page = await self._call(self._listing.page(page.next_page_token))
            yield page

    async def __aiter__(self) -> AsyncIterator[Run]:
        async for page in self.pages():
            for run in page.runs:
                yield run
