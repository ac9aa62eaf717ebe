"""`python -m neffcache.client.cli`: what the `neffcache` console script runs."""

from neffcache.client.cli.app import main

if __name__ == "__main__":
    main()
