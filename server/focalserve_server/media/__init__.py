"""Images named by URL: `data:` URLs decoded, http(s) URLs fetched without letting the URL choose where
the gateway connects (server-side request forgery).

- `urls`: the one parser of image URLs, and the allow-list of hosts.
- `addresses`: which addresses a fetch may connect to, and the resolver that finds a host's.
- `fetch`: `MediaFetcher`, the bytes an image URL names, under the rules of both.
"""
