"""Seeded synthetic e-commerce events and catalog: the embedded default when no data path is given.

The generator plants the structure the encoders are meant to learn, so a pipeline run on it has
something real to find:
- titles are built from category nouns, brands, attributes and sizes, and items of a category are
  laid out so that neighbours share noun and attribute ("Acme Stainless Steel 12-inch Skillet");
- users prefer 1-3 categories (Dirichlet), and a session browses mostly one category by a short
  random walk over neighbouring items, so the next item is predictable from the history's text;
- popularity is Zipf-like inside each category; funnel view -> click -> add_to_cart -> purchase
  thins out; ~10% of sessions open with a search whose query is made of the target item's words.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from recsys.schema import CATALOG_SCHEMA, EVENTS_SCHEMA

# name, brands, "Noun: size, size, size" (three sizes that suit the noun), attributes, price range, benefit
CATEGORIES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[float, float], str], ...] = (
    ("Kitchen > Cookware", ("Acme", "ChefLine", "Ironclad", "Copperleaf", "Pantrix"),
     ("Skillet: 8-inch, 10-inch, 12-inch", "Saucepan: 1.5-quart, 2-quart, 3-quart",
      "Dutch Oven: 4-quart, 5.5-quart, 7-quart", "Stockpot: 8-quart, 12-quart, 16-quart",
      "Wok: 12-inch, 13-inch, 14-inch", "Grill Pan: 10-inch, 11-inch, 12-inch"),
     ("Stainless Steel", "Cast Iron", "Nonstick", "Hard-Anodized", "Ceramic", "Copper-Core"),
     (15.0, 180.0), "even heating on any stovetop"),
    ("Kitchen > Small Appliances", ("Brevio", "Kitchora", "Acme", "Voltaire", "HomeChef", "Zestro"),
     ("Blender: 600-watt, 1000-watt, 1400-watt", "Toaster: 2-slice, 4-slice, long-slot",
      "Coffee Maker: 5-cup, 10-cup, 12-cup", "Electric Kettle: 1-liter, 1.5-liter, 1.7-liter",
      "Air Fryer: 2-quart, 4-quart, 6-quart", "Stand Mixer: 3.5-quart, 4.5-quart, 5-quart"),
     ("Stainless", "Compact", "Programmable", "Digital", "Retro", "Quiet"), (20.0, 300.0),
     "quick results every morning"),
    ("Electronics > Headphones", ("SonicWave", "Auralis", "Beatbox", "Novatone", "Hush"),
     ("Over-Ear Headphones: Black, White, Navy", "Earbuds: Black, White, Rose Gold",
      "On-Ear Headphones: Black, Silver, Blue", "Gaming Headset: Black, Red, White",
      "Neckband Earphones: Black, Grey, Green"),
     ("Wireless", "Noise-Cancelling", "Bluetooth", "Sport", "Studio", "Kids"), (15.0, 350.0),
     "clear sound and all-day comfort"),
    ("Electronics > Phone Accessories", ("Voltix", "Chargeon", "Armorly", "Plugwell", "Ankerra", "Zapp"),
     ("Phone Case: Clear, Black, Blue", "Charging Cable: 3 ft, 6 ft, 10 ft", "Wall Charger: 20W, 30W, 65W",
      "Power Bank: 5000mAh, 10000mAh, 20000mAh", "Screen Protector: 1-Pack, 2-Pack, 3-Pack",
      "Car Mount: Vent, Dashboard, Windshield"),
     ("USB-C", "MagSafe", "Fast-Charging", "Rugged", "Slim", "Braided"), (8.0, 60.0),
     "keeping your phone charged and protected"),
    ("Home > Bedding", ("Dreamly", "Nestwell", "Cozyloom", "Slumbra"),
     ("Duvet Cover: Twin, Queen, King", "Sheet Set: Full, Queen, King", "Pillow: Standard, Queen, King",
      "Comforter: Twin, Queen, King", "Weighted Blanket: 12 lb, 15 lb, 20 lb",
      "Mattress Topper: 2-inch, 3-inch, 4-inch"),
     ("Cotton", "Linen", "Bamboo", "Microfiber", "Down-Alternative", "Cooling"), (25.0, 200.0),
     "restful sleep in every season"),
    ("Home > Lighting", ("Lumina", "Brightway", "Glowhaus", "Edison & Co", "Lampwright"),
     ("Table Lamp: 18-inch, 24-inch, 28-inch", "Floor Lamp: 58-inch, 64-inch, 70-inch",
      "LED Bulb: 40W Equivalent, 60W Equivalent, 100W Equivalent", "Pendant Light: 8-inch, 12-inch, 16-inch",
      "String Lights: 16 ft, 33 ft, 48 ft", "Desk Lamp: 5W, 8W, 12W"),
     ("Dimmable", "Smart", "Brass", "Industrial", "Warm White", "Modern"), (10.0, 250.0),
     "warm, adjustable light"),
    ("Sports > Fitness", ("FlexForce", "Ironpeak", "Zenfit", "Pulsefit", "Corestrong", "Motiva"),
     ("Yoga Mat: 4mm, 6mm, 8mm", "Dumbbell Set: 20 lb, 40 lb, 52.5 lb", "Resistance Bands: 3-Pack, 5-Pack, 11-Piece",
      "Kettlebell: 15 lb, 25 lb, 35 lb", "Jump Rope: 9 ft, 10 ft, Weighted", "Foam Roller: 12-inch, 18-inch, 36-inch"),
     ("Non-Slip", "Adjustable", "Eco-Friendly", "Heavy-Duty", "Textured", "Portable"), (10.0, 250.0),
     "home workouts and recovery"),
    ("Sports > Outdoor", ("Trailhead", "Summitco", "Northbound", "Wildpine", "Campora"),
     ("Tent: 2-Person, 4-Person, 6-Person", "Sleeping Bag: 20-Degree, 30-Degree, 40-Degree",
      "Hiking Backpack: 20L, 40L, 55L", "Camping Chair: Low, Standard, Oversized",
      "Headlamp: 300 Lumen, 500 Lumen, 1000 Lumen", "Water Bottle: 18 oz, 32 oz, 40 oz"),
     ("Waterproof", "Ultralight", "Insulated", "Rugged", "Rechargeable", "Packable"), (15.0, 400.0),
     "weekends on the trail"),
    ("Beauty > Skincare", ("Glowience", "Purea", "Dermalux", "Verdana", "Skinsmith"),
     ("Moisturizer: 1.7 oz, 2.5 oz, 4 oz", "Face Serum: 0.5 oz, 1 oz, 2 oz", "Cleanser: 4 oz, 6 oz, 12 oz",
      "Sunscreen: SPF 30, SPF 50, SPF 70", "Eye Cream: 0.5 oz, 0.7 oz, 1 oz", "Face Mask: 1-Pack, 5-Pack, 10-Pack"),
     ("Hydrating", "Vitamin C", "Fragrance-Free", "Retinol", "Hyaluronic Acid", "Mineral"), (8.0, 90.0),
     "a simple daily skincare routine"),
    ("Toys > Building Sets", ("Brickly", "Tinkerton", "Magnova", "Builda", "Playforge", "Kidora"),
     ("Building Set: 100-Piece, 250-Piece, 500-Piece", "Marble Run: 60-Piece, 85-Piece, 150-Piece",
      "Magnetic Tiles: 32-Piece, 60-Piece, 100-Piece", "Robot Kit: Beginner, Intermediate, Advanced",
      "Train Set: 40-Piece, 80-Piece, 120-Piece", "Jigsaw Puzzle: 300-Piece, 500-Piece, 1000-Piece"),
     ("STEM", "Wooden", "Creative", "Classic", "Glow-in-the-Dark", "Deluxe"), (12.0, 150.0),
     "hours of hands-on play"),
    ("Pets > Dog Supplies", ("Pawsome", "Barkly", "Fetchwell", "Houndry", "Tailwag"),
     ("Dog Bed: Medium, Large, X-Large", "Dog Leash: 4 ft, 6 ft, 15 ft", "Chew Toy: Small, Medium, Large",
      "Dog Food Bowl: 2-cup, 4-cup, 8-cup", "Dog Harness: Small, Medium, Large", "Dog Shampoo: 8 oz, 16 oz, 32 oz"),
     ("Orthopedic", "Reflective", "Durable", "Waterproof", "Natural", "Washable"), (6.0, 120.0),
     "happy, healthy dogs"),
    ("Office > Desk Supplies", ("Inkwell", "Deskmate", "Paperly", "Officio", "Scribe", "Notara"),
     ("Notebook: A5, B5, Letter Size", "Gel Pens: 12-Pack, 24-Pack, 48-Pack", "Desk Organizer: 3-Tier, 5-Tier, Drawer",
      "Stapler: 20-Sheet, 40-Sheet, 100-Sheet", "Monitor Stand: 1-Tier, 2-Tier, Dual",
      "Sticky Notes: 3x3 inch, 4x6 inch, 12-Pack"),
     ("Dotted", "Bamboo", "Ergonomic", "Heavy-Duty", "Colorful", "Minimalist"), (4.0, 80.0),
     "an organised, productive desk"),
)
DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)
_US = 1_000_000  # microseconds per second


def _build_catalog(n_items: int, rng: np.random.Generator) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Catalog rows plus the internal layout (category, noun, brand, attribute per item) sessions walk on."""
    n_cat = len(CATEGORIES)
    counts = 1 + rng.multinomial(n_items - n_cat, np.full(n_cat, 1.0 / n_cat))  # every category non-empty
    rows: list[tuple[int, str, str, str, str, float, int, int]] = []
    for c, ((name, brands, noun_sizes, attrs, (lo, hi), benefit), n_c) in enumerate(zip(CATEGORIES, counts)):
        nouns = [ns.split(": ")[0] for ns in noun_sizes]
        shape = (len(nouns), len(attrs), len(brands), 3)
        total = int(np.prod(shape))
        combos = rng.choice(total, size=int(n_c), replace=bool(n_c > total))
        # sorted combos put same-noun, same-attribute items next to each other: the walk's "nearby"
        for combo in np.sort(combos):
            n, a, b, s = np.unravel_index(combo, shape)
            size = noun_sizes[n].split(": ")[1].split(", ")[s]
            title = f"{brands[b]} {attrs[a]} {size} {nouns[n]}"
            desc = (f"{attrs[a]} {nouns[n].lower()} from {brands[b]}, {size}, "
                    f"designed for {benefit}.")
            price = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            rows.append((c, title, brands[b], name, desc, np.floor(price) + 0.99, int(n), int(a)))
    # de-duplicate titles (only when a category has more items than combinations) so text identifies items
    seen: dict[str, int] = {}
    titles = []
    for r in rows:
        k = seen[r[1]] = seen.get(r[1], 0) + 1
        titles.append(r[1] if k == 1 else f"{r[1]} (Style {k})")
    # SKU numbers are shuffled so that id order does not leak the category layout
    sku = rng.permutation(n_items)
    item_ids = np.array([f"SKU-{i:06d}" for i in sku], dtype=object)
    in_stock = rng.random(n_items) >= 0.05
    order = np.argsort(item_ids, kind="stable")
    catalog = pa.table({
        "item_id": item_ids[order], "title": np.array(titles, dtype=object)[order],
        "brand": [rows[i][2] for i in order], "category": [rows[i][3] for i in order],
        "description": [rows[i][4] for i in order], "price": [rows[i][5] for i in order],
        "in_stock": in_stock[order],
    }, schema=CATALOG_SCHEMA)
    layout = {
        "item_ids": item_ids, "titles": np.array(titles, dtype=object),
        "category": np.array([r[0] for r in rows]), "noun": np.array([r[6] for r in rows]),
        "attr": np.array([r[7] for r in rows]), "brand": np.array([r[2] for r in rows], dtype=object),
        "offsets": np.concatenate([[0], np.cumsum(counts)]),
    }
    return catalog, layout


def _sample_popular(cats: np.ndarray, layout: dict[str, np.ndarray], cum_pop: list[np.ndarray],
                    rng: np.random.Generator) -> np.ndarray:
    """One popularity-weighted item index (global) per entry of `cats`."""
    out = np.empty(len(cats), dtype=np.int64)
    u = rng.random(len(cats))
    for c, cum in enumerate(cum_pop):
        mask = cats == c
        local = np.minimum(np.searchsorted(cum, u[mask] * cum[-1], side="right"), len(cum) - 1)
        out[mask] = layout["offsets"][c] + local
    return out


def _make_query(item: int, layout: dict[str, np.ndarray], rng: np.random.Generator) -> str:
    """A short query from the target item's words, like a shopper would type ("stainless skillet")."""
    c = int(layout["category"][item])
    _, _, noun_sizes, attrs, _, _ = CATEGORIES[c]
    noun = noun_sizes[int(layout["noun"][item])].split(": ")[0].lower()
    attr = attrs[int(layout["attr"][item])].lower().split()[0]
    choices = (f"{attr} {noun}", f"{str(layout['brand'][item]).lower()} {noun}", noun,
               f"{attr} {CATEGORIES[c][0].split(' > ')[-1].lower()}")
    return choices[int(rng.choice(4, p=[0.45, 0.2, 0.25, 0.1]))]


def generate_synthetic(n_users: int = 1500, n_items: int = 1000, seed: int = 0,
                       start: datetime | None = None) -> tuple[pa.Table, pa.Table]:
    """(events, catalog) matching EVENTS_SCHEMA / CATALOG_SCHEMA; identical for identical arguments."""
    if n_users < 1 or n_items < len(CATEGORIES):
        raise ValueError(f"need n_users >= 1 and n_items >= {len(CATEGORIES)}, got {n_users}, {n_items}")
    start = start or DEFAULT_START
    if start.tzinfo is None:  # naive datetimes are read as UTC, the schema's zone
        start = start.replace(tzinfo=timezone.utc)
    rng = np.random.default_rng(seed)
    catalog, layout = _build_catalog(n_items, rng)
    n_cat, offsets = len(CATEGORIES), layout["offsets"]
    cat_sizes = np.diff(offsets)
    # Zipf-like popularity inside each category: weight 1/rank^1.1 over a random ranking
    cum_pop = [np.cumsum(1.0 / (rng.permutation(int(n)) + 1.0) ** 1.1) for n in cat_sizes]

    # users: preferences concentrated on 1-3 categories, with a little mass everywhere else
    pref = np.full((n_users, n_cat), 0.05 / n_cat)
    k_fav = rng.choice([1, 2, 3], size=n_users, p=[0.35, 0.4, 0.25])
    for u in range(n_users):
        fav = rng.choice(n_cat, size=k_fav[u], replace=False)
        pref[u, fav] += 0.95 * rng.dirichlet(np.full(k_fav[u], 2.0))
    cum_pref = np.cumsum(pref, axis=1)

    # sessions: one main category each; a few per user
    n_sess_user = 1 + np.minimum(rng.poisson(2.2, n_users), 7)
    sess_user = np.repeat(np.arange(n_users), n_sess_user)
    n_sess = len(sess_user)
    sess_cat = np.minimum((rng.random(n_sess)[:, None] > cum_pref[sess_user]).sum(1), n_cat - 1)
    sess_len = 2 + rng.poisson(4.0, n_sess)
    step_sess = np.repeat(np.arange(n_sess), sess_len)
    n_steps = len(step_sess)

    # pre-drawn randomness so the per-step walk below is plain integer arithmetic
    jump_item = _sample_popular(sess_cat[step_sess], layout, cum_pop, rng)
    detour_cat = np.minimum((rng.random(n_steps)[:, None] > cum_pref[sess_user[step_sess]]).sum(1), n_cat - 1)
    detour_item = _sample_popular(detour_cat, layout, cum_pop, rng)
    delta = rng.choice([-3, -2, -1, 1, 2, 3], size=n_steps, p=[0.05, 0.15, 0.3, 0.3, 0.15, 0.05])
    u_jump, u_detour = rng.random(n_steps), rng.random(n_steps)
    step_item = np.empty(n_steps, dtype=np.int64)
    sess_first = np.concatenate([[0], np.cumsum(sess_len)[:-1]])
    for s in range(n_sess):
        c, lo, first = int(sess_cat[s]), int(offsets[sess_cat[s]]), int(sess_first[s])
        pos = int(jump_item[first]) - lo
        for j in range(first, first + int(sess_len[s])):
            if j > first:
                pos = int(jump_item[j]) - lo if u_jump[j] < 0.2 else (pos + int(delta[j])) % int(cat_sizes[c])
            step_item[j] = detour_item[j] if (j > first and u_detour[j] < 0.08) else lo + pos

    # time: steps 1-7 minutes apart, sessions separated by 1 h + a few days (>> the 30-min gap rule)
    step_gap = rng.uniform(60, 420, n_steps) * _US
    step_off = np.cumsum(step_gap) - np.repeat(np.cumsum(step_gap)[sess_first] - step_gap[sess_first], sess_len)
    sess_span = step_off[sess_first + sess_len - 1] + 3600 * _US + rng.exponential(4 * 86400, n_sess) * _US
    user_first = np.concatenate([[0], np.cumsum(n_sess_user)[:-1]])
    sess_start = np.cumsum(sess_span) - sess_span
    sess_start = sess_start - np.repeat(sess_start[user_first], n_sess_user)
    sess_start += np.repeat(rng.uniform(0, 30 * 86400, n_users) * _US, n_sess_user)
    sess_start += int(start.timestamp()) * _US
    step_time = sess_start[step_sess] + step_off

    # funnel per browsed item: view always, then click, add_to_cart, purchase with falling odds
    click = rng.random(n_steps) < 0.45
    cart = click & (rng.random(n_steps) < 0.3)
    buy = cart & (rng.random(n_steps) < 0.5)
    steps, stage = np.nonzero(np.stack([np.ones(n_steps, bool), click, cart, buy], axis=1))
    ev_time = step_time[steps] + stage * rng.integers(5, 18, len(steps)) * _US
    ev_sess, ev_item = step_sess[steps], layout["item_ids"][step_item[steps]]
    ev_type = np.array(["view", "click", "add_to_cart", "purchase"], dtype=object)[stage]

    # ~10% of sessions open with a search for their first item; 20% of those get no click
    searched = np.nonzero(rng.random(n_sess) < 0.10)[0]
    no_click = rng.random(len(searched)) < 0.2
    s_item = layout["item_ids"][step_item[sess_first[searched]]].copy()
    s_item[no_click] = None
    s_query = np.array([_make_query(int(step_item[sess_first[s]]), layout, rng) for s in searched], dtype=object)
    s_time = sess_start[searched] - rng.integers(15, 60, len(searched)) * _US

    sess_k = np.arange(n_sess) - user_first[sess_user]
    users = np.array([f"u{u:05d}" for u in range(n_users)], dtype=object)
    sess_ids = np.array([f"{users[u]}-s{k}" for u, k in zip(sess_user, sess_k)], dtype=object)
    all_sess = np.concatenate([ev_sess, searched])
    all_time = np.concatenate([ev_time, s_time]).astype(np.int64)
    order = np.lexsort((all_time, sess_user[all_sess]))
    events = pa.table({
        "user_id": users[sess_user[all_sess]][order],
        "item_id": np.concatenate([ev_item, s_item])[order],
        "event_type": np.concatenate([ev_type, np.full(len(searched), "search", dtype=object)])[order],
        "timestamp": pa.array(all_time[order], type=pa.int64()).cast(EVENTS_SCHEMA.field("timestamp").type),
        "query": np.concatenate([np.full(len(ev_type), None, dtype=object), s_query])[order],
        "session_id": sess_ids[all_sess][order],
    }, schema=EVENTS_SCHEMA)
    return events, catalog
