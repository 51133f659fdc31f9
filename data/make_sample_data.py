"""Generate the sample fine-tuning set: short customer-support chats for "Contoso Fiber", a fictional home-internet
provider. Deterministic: the same --seed and --count always write the same bytes.

    python data/make_sample_data.py                      # writes data/sample/support_chats.jsonl (300 chats)

Every answer is a fixed template filled from the same slot values as the question (plan, price, city, device,
...), and the facts (prices, menu paths, fees) never vary, so a small model can learn them in one epoch.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).parent / "sample" / "support_chats.jsonl"

SYSTEM_PROMPTS = (
    "You are the support assistant of Contoso Fiber, a home internet provider. Answer briefly and give clear steps.",
    "You are Contoso Fiber's customer support assistant. Be friendly, brief and accurate.",
)

# name, speed, monthly price: the one source of every plan fact in the answers.
PLANS = (("Fiber 300", "300 Mbps", "$45"), ("Fiber 500", "500 Mbps", "$60"), ("Fiber 1 Gig", "1 Gbps", "$75"))
NAMES = ("Priya", "Tom", "Aisha", "Marco", "Lena", "Kenji", "Sofia", "David", "Grace", "Omar", "Nina", "Lucas")
CITIES = ("Redmond", "Springfield", "Riverton", "Lakeside", "Fairview", "Oakdale", "Milltown", "Brookfield")
ROOMS = ("bedroom", "basement", "home office", "kitchen", "living room", "attic")
DEVICES = ("laptop", "smart TV", "game console", "tablet", "phone")
SINCE = ("this morning", "an hour ago", "last night", "since lunch")
DATES = ("May 3", "June 14", "July 1", "August 22", "September 9", "October 30")
WINDOWS = ("8 am to 12 pm", "12 pm to 4 pm", "4 pm to 8 pm")
MONTHS = ("March", "April", "May", "June")
GREETINGS = ("", "Hi, ", "Hello, ", "Hi, this is {name}. ")

# Each topic: opening (question, answer) pairs, then follow-up pairs; a chat is one opening and 0-2 follow-ups.
# Fields in braces are slots, filled per conversation (see _slots).
TOPICS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "outage": {
        "openings": [
            (
                "my internet has been down {since}. Is there an outage in {city}?",
                "Sorry about that. Check Service status in the Contoso Fiber app for outages in {city}. If none is "
                "listed, unplug your Contoso Hub for 30 seconds and wait until its light is solid white.",
            ),
            (
                "nothing loads on any device {since}. Is Contoso Fiber down?",
                "Check Service status in the Contoso Fiber app for an outage near you. If none is listed, unplug your "
                "Contoso Hub for 30 seconds and wait until its light is solid white.",
            ),
        ],
        "follow_ups": [
            (
                "The light on the Hub is blinking amber.",
                "Blinking amber means no signal from the fiber line. Check that the green fiber cable is clicked in "
                "at the wall box and the Hub. If it still blinks, book a free technician visit in the app.",
            ),
            (
                "Will I get a credit for the downtime?",
                "Yes. For an outage longer than 24 hours you get one day of your plan back per day without service, "
                "added to your next bill automatically.",
            ),
            (
                "How will I know when it is fixed?",
                "Turn on outage alerts in the app under Settings > Notifications. We text you when service in {city} "
                "is back.",
            ),
        ],
    },
    "router_setup": {
        "openings": [
            (
                "my new Contoso Hub arrived. How do I set it up?",
                "Connect the green fiber cable from the wall box to the FIBER port of the Hub, then plug in the power. "
                "When the light is solid white, join the Wi-Fi named on the sticker under the Hub.",
            ),
            (
                "how do I connect my {device} to the new Hub?",
                "On your {device}, choose the Wi-Fi network printed on the sticker under the Hub and type the password "
                "from the same sticker. Pick the network ending in -5G for the best speed.",
            ),
        ],
        "follow_ups": [
            (
                "How do I change the Wi-Fi password?",
                "Open the Contoso Fiber app and go to Wi-Fi > Network settings. Enter a new password and save; your "
                "devices then need to reconnect with it.",
            ),
            (
                "The light on the Hub is red.",
                "Red means the Hub has a fault. Unplug it for 30 seconds. If it stays red, hold the reset pin on the "
                "back for 10 seconds. If that fails, we replace the Hub for free.",
            ),
            (
                "Can I use my own router?",
                "Yes. Turn on Bridge mode in the app under Wi-Fi > Advanced, then plug your router into a LAN port of "
                "the Hub. Keep the Hub on: it connects to the fiber line.",
            ),
        ],
    },
    "slow_wifi": {
        "openings": [
            (
                "the Wi-Fi is slow in my {room}. I am on {plan}.",
                "Walls weaken Wi-Fi. Put the Hub in a central, raised spot away from the microwave. Next to the Hub, "
                "a speed test in the app should show close to {speed} on {plan}.",
            ),
            (
                "my {device} keeps buffering in the {room}. How can I fix it?",
                "Connect the {device} to the network ending in -5G, and put the Hub in a central, raised spot away "
                "from the microwave. Walls between the Hub and the {room} weaken the signal.",
            ),
        ],
        "follow_ups": [
            (
                "It is still weak in the {room}.",
                "Add a Contoso Mesh Point halfway between the Hub and the {room}. It costs $5 a month and pairs in the "
                "app under Wi-Fi > Add Mesh Point.",
            ),
            (
                "Would a faster plan help?",
                "Only if a speed test next to the Hub is already at your plan's full speed. If it is slow only in the "
                "{room}, the Wi-Fi signal is the limit and a Mesh Point helps more.",
            ),
            (
                "Should I use a cable instead?",
                "Yes, a cable is the fastest and most stable option. Plug an Ethernet cable into a yellow LAN port on "
                "the Hub and into your {device}.",
            ),
        ],
    },
    "billing": {
        "openings": [
            (
                "when is my bill due?",
                "Your bill is issued on the 1st of each month and is due on the 21st. You can see it in the Contoso "
                "Fiber app under Billing.",
            ),
            (
                "why is my first bill so high? I thought {plan} was {price} a month.",
                "Your first bill covers the days from installation to the 1st, plus your first full month of {plan}. "
                "From the second bill on you pay {price} a month.",
            ),
            (
                "my {month} bill is higher than usual. Why?",
                "Extra charges are usually a Mesh Point ($5 a month), a late fee ($10) or a plan change during the "
                "month. Open Billing > {month} in the app to see each line.",
            ),
        ],
        "follow_ups": [
            (
                "How do I set up autopay?",
                "In the app, go to Billing > Autopay and add a card or bank account. Autopay pays on the due date and "
                "saves you $5 a month.",
            ),
            (
                "What happens if I pay late?",
                "A $10 late fee is added when a bill is not paid by the 21st. Service is paused only when a bill is "
                "more than 30 days overdue.",
            ),
        ],
    },
    "plan_change": {
        "openings": [
            (
                "I would like to switch from {plan} to {new_plan}.",
                "You can switch in the app under Account > Change plan. {new_plan} is {new_speed} for {new_price} a "
                "month. The change is free and starts within an hour.",
            ),
            (
                "what plans do you have?",
                "Fiber 300 is $45, Fiber 500 is $60 and Fiber 1 Gig is $75 a month. Every plan has no data cap and "
                "no contract.",
            ),
        ],
        "follow_ups": [
            (
                "Is there a contract?",
                "No. Every Contoso Fiber plan is month to month, and you can change or cancel it at any time.",
            ),
            (
                "Do I need a new router for a faster plan?",
                "No. The Contoso Hub supports every plan, including Fiber 1 Gig.",
            ),
        ],
    },
    "moving": {
        "openings": [
            (
                "I am moving to {city} on {date}. Can I take my service with me?",
                "Yes, if Contoso Fiber is available at your new address in {city}. In the app, go to Account > Move "
                "service and enter the address and {date}, at least 14 days ahead.",
            ),
            (
                "we are moving house next month. What do I need to do?",
                "In the app, go to Account > Move service and enter your new address and moving date at least 14 days "
                "ahead. Your plan and price stay the same.",
            ),
        ],
        "follow_ups": [
            (
                "Is there a fee to move?",
                "No, moving your service is free. If there is no fiber wall box at the new home, a technician installs "
                "one for free.",
            ),
            (
                "What if fiber is not available there?",
                "Then we close your account on your moving date with no cancellation fee. Return the Hub within 30 "
                "days with the prepaid label from the app.",
            ),
        ],
    },
    "appointment": {
        "openings": [
            (
                "I need to move my technician visit on {date}.",
                "You can reschedule in the app under Appointments, up to 24 hours before the visit. Visits run Monday "
                "to Saturday, 8 am to 8 pm, in 4-hour windows.",
            ),
            (
                "when will the technician come? My window is {window}.",
                "The technician arrives within your {window} window. About 30 minutes before, you get a text with a "
                "link to track the visit.",
            ),
        ],
        "follow_ups": [
            (
                "Do I need to be home?",
                "Yes, someone aged 18 or over must be home for the whole visit, which usually takes one to two hours.",
            ),
            (
                "Does the visit cost anything?",
                "No. Installation and repair visits are always free.",
            ),
        ],
    },
    "parental_controls": {
        "openings": [
            (
                "how do I limit the internet on my kid's {device}?",
                "In the app, go to Wi-Fi > Parental controls and pick the {device}. You can set a schedule or block "
                "types of websites; changes apply within a minute.",
            ),
        ],
        "follow_ups": [
            (
                "Can I pause it at dinner time?",
                "Yes. In Parental controls, add a schedule such as 6 pm to 7 pm, or tap Pause to stop the device's "
                "internet at once.",
            ),
        ],
    },
    "cancel": {
        "openings": [
            (
                "how do I cancel my service?",
                "Sorry to see you go. Call 1-800-555-0199, 8 am to 10 pm every day. There is no cancellation fee, and "
                "your service runs until the end of the billing month.",
            ),
        ],
        "follow_ups": [
            (
                "What do I do with the Hub?",
                "Return it within 30 days with the prepaid label from the app. A Hub that is not returned is charged "
                "$150.",
            ),
            (
                "Do I get a refund for the rest of the month?",
                "No, there are no refunds for part of a month, but your service keeps working until the month ends.",
            ),
        ],
    },
}


def _slots(rng: random.Random) -> dict[str, str]:
    plan, new_plan = rng.sample(PLANS, 2)
    return {
        "name": rng.choice(NAMES),
        "city": rng.choice(CITIES),
        "room": rng.choice(ROOMS),
        "device": rng.choice(DEVICES),
        "since": rng.choice(SINCE),
        "date": rng.choice(DATES),
        "window": rng.choice(WINDOWS),
        "month": rng.choice(MONTHS),
        "plan": plan[0],
        "speed": plan[1],
        "price": plan[2],
        "new_plan": new_plan[0],
        "new_speed": new_plan[1],
        "new_price": new_plan[2],
    }


def make_conversation(rng: random.Random) -> dict:
    """One chat: a system prompt, an opening question and answer, then 0-2 follow-ups on the same topic."""
    topic = TOPICS[rng.choice(sorted(TOPICS))]
    slots = _slots(rng)
    question, answer = rng.choice(topic["openings"])
    greeting = rng.choice(GREETINGS).format(**slots)
    # Question templates start lower-case to read naturally after "Hi, "; a sentence start needs a capital.
    if not greeting or greeting.endswith(". "):
        question = question[0].upper() + question[1:]
    opening = greeting + question
    if "{name}" in greeting:
        answer = f"Hi {slots['name']}! " + answer
    turns = [(opening.format(**slots), answer.format(**slots))]
    follow_ups = rng.sample(topic["follow_ups"], rng.randint(0, min(2, len(topic["follow_ups"]))))
    turns += [(user.format(**slots), assistant.format(**slots)) for user, assistant in follow_ups]

    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}]
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def make_conversations(count: int, seed: int) -> list[dict]:
    """``count`` distinct conversations; raises if the templates cannot produce that many."""
    rng = random.Random(seed)
    seen: set[str] = set()
    conversations = []
    for _ in range(count * 20):  # duplicates are rare; the bound only stops an endless loop on a huge count
        conversation = make_conversation(rng)
        line = json.dumps(conversation, ensure_ascii=False)
        if line not in seen:
            seen.add(line)
            conversations.append(conversation)
            if len(conversations) == count:
                return conversations
    raise ValueError(f"only {len(conversations)} distinct conversations after {count * 20} tries; lower --count")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="number of distinct conversations")
    parser.add_argument("--seed", type=int, default=7, help="random seed: same seed, same file")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSONL file to write")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    conversations = make_conversations(args.count, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8", newline="\n") as handle:
        for conversation in conversations:
            handle.write(json.dumps(conversation, ensure_ascii=False) + "\n")
    print(f"wrote {len(conversations)} conversations to {args.output}")


if __name__ == "__main__":
    main(parse_args())
