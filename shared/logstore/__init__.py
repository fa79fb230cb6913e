"""A provider-neutral log store: an app's lines in time order, a history on disk, fan-out to followers.

What every provider's logs share, whatever collects the lines (the local provider's Docker collector is a
thin layer over it): :mod:`.lines` (a line and a source's cursor), :mod:`.history` (segment files per app,
bounded by bytes and age), :mod:`.applog` (the ordering of an app's sources, sequence numbers, followers
served from history, memory and then live, never blocking the writer), :mod:`.racklog` (the rack's own log
file) and :mod:`.timestamps`.

Order: lines wait in a per-app heap ordered by time until every source of the app that is delivering (it
sent something within ``order_window`` seconds, plus three times the recent delivery lag) has delivered a
line at least as late, or for four times that at most; then they get the app's next sequence number and go,
in time order, to the history and then to every follower. A quiet source is not waited for, so a lone line
goes out at once; a source catching up after a restart is waited for until it has read up to its end, and a
*pending* source (an event on its way) for a few seconds at most.

The order is a guarantee, not a best effort: a line that still comes later than lines already released with
later times goes out with the time of the newest released line, the time it is emitted with, rather than its
own earlier one (its source's cursor keeps its own). A follower's stream and the history are in time order.

History: ``APP/<first seq>.log`` segments of tab-separated lines, bounded per app by bytes and age. A
follower is sent a line only once it is written there: a writer killed at any point loses none that a
follower saw (the next one resumes where the history ends), so a follow resumed across a restart neither
misses a line nor is sent one twice. A follower reads the history from ``since``, then the lines still in
memory, then subscribes; its queue is bounded, and a follower that falls behind is not waited for: it catches
up from the history and memory by sequence number, then subscribes again.
"""
