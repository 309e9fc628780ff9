"""Subscription links and the `calsync urls` command."""

from urllib.parse import parse_qs, urlsplit

from calsync.cli import main
from calsync.config import load_config
from calsync.links import feed_links, public_url_problems


def config_with(tmp_path, server: str, feed: str = 'name = "bookings"\ntitle = "Salon & Spa"\ntoken = "s3cr+t/tok"'):
    path = tmp_path / "calsync.toml"
    path.write_text(f"[server]\n{server}\n\n[[feeds]]\n{feed}\n", encoding="utf-8")
    return path


def test_links_for_https_public_url(tmp_path):
    config = load_config(str(config_with(tmp_path, 'public_url = "https://cal.example.com"')), env={}, require_secret=False)

    links = feed_links(config, config.feeds[0])

    assert links.url == "https://cal.example.com/feeds/bookings.ics?token=s3cr%2Bt%2Ftok"
    assert links.webcal == "webcal://cal.example.com/feeds/bookings.ics?token=s3cr%2Bt%2Ftok"
    google = parse_qs(urlsplit(links.google).query)
    assert google["cid"] == [links.webcal]
    outlook = parse_qs(urlsplit(links.outlook_personal).query)
    assert outlook["url"] == [links.url]
    assert outlook["name"] == ["Salon & Spa"]
    assert links.outlook_work.startswith("https://outlook.office.com/calendar/0/addfromweb?")
    assert public_url_problems(config) == []


def test_public_feed_link_has_no_token(tmp_path):
    path = config_with(tmp_path, 'public_url = "https://cal.example.com/"', 'name = "open"\npublic = true')
    config = load_config(str(path), env={}, require_secret=False)

    assert feed_links(config, config.feeds[0]).url == "https://cal.example.com/feeds/open.ics"


def test_http_public_url_warned(tmp_path):
    config = load_config(str(config_with(tmp_path, 'public_url = "http://cal.example.com"')), env={}, require_secret=False)

    problems = public_url_problems(config)

    assert len(problems) == 1
    assert "not https" in problems[0]


def test_private_and_local_hosts_warned(tmp_path):
    for host, reach in [
        ("10.1.2.3", "a private address, reachable only from the local network"),
        ("[fd00::1]", "a private address, reachable only from the local network"),
        ("169.254.0.9", "a private address, reachable only from the local network"),
        ("localhost", "reachable only from this machine"),
        ("[::1]", "reachable only from this machine"),
        ("0.0.0.0", "not an address that anyone can connect to"),
    ]:
        path = config_with(tmp_path, f'public_url = "https://{host}:8443"')
        config = load_config(str(path), env={}, require_secret=False)

        problems = public_url_problems(config)

        assert len(problems) == 1, host
        assert problems[0] == f"server.public_url host {host.strip('[]')} is {reach}"


def test_public_hosts_not_warned(tmp_path):
    # Only parsed: no test connects to these hosts.
    for host in ("cal.example.com", "8.8.8.8", "cal.local.example.com"):
        config = load_config(str(config_with(tmp_path, f'public_url = "https://{host}"')), env={}, require_secret=False)

        assert public_url_problems(config) == [], host


def test_missing_public_url_falls_back_to_listen(tmp_path):
    config = load_config(str(config_with(tmp_path, 'listen = "127.0.0.1:9090"')), env={}, require_secret=False)

    links = feed_links(config, config.feeds[0])

    assert links.url.startswith("http://127.0.0.1:9090/feeds/bookings.ics")
    assert "public_url is not set" in public_url_problems(config)[0]


def test_urls_command_prints_every_link(tmp_path, capsys, caplog):
    path = config_with(tmp_path, 'public_url = "http://cal.example.com"')

    code = main(["--config", str(path), "urls"])

    output = capsys.readouterr().out
    assert code == 0
    assert "Salon & Spa (bookings)" in output
    assert "webcal://cal.example.com/feeds/bookings.ics" in output
    assert "https://calendar.google.com/calendar/r?cid=" in output
    assert "https://outlook.live.com/calendar/0/addfromweb?url=" in output
    assert "not https" in caplog.text
    assert "s3cr+t/tok" not in caplog.text
