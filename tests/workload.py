"""A realistic mixed-length Chinese workload shared by the benchmarks (deterministic), and
the way they drive it: concurrent callers, each one request at a time."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

SENTENCES = [
    "我喜欢吃苹果。",
    "他昨天买了最新款的苹果手机，用起来很顺手。",
    "这家公司发布的财报显示，第三季度营收同比增长了百分之十二。",
    "春天来了，山坡上的杜鹃花开得漫山遍野。",
    "清晨的树林里，杜鹃一声接一声地叫着。",
    "请把会议室的空调温度调低一点。",
    "地铁二号线因为设备故障暂停运营半小时。",
    "她一边听音乐一边整理书架上的旧书。",
    "医生建议他每天至少步行三十分钟。",
    "这部电影的结局出乎所有人的意料。",
    "我们打算周末去郊外露营，顺便看看星星。",
    "银行下调了存款利率，很多人开始考虑别的理财方式。",
    "河岸边的柳树长出了嫩绿的新芽。",
    "他打电话告诉我航班延误了两个小时。",
    "孩子们在操场上打篮球，玩得满头大汗。",
    "这道菜的做法很简单，只需要鸡蛋、西红柿和一点盐。",
    "老师耐心地解释了这个公式的来历。",
    "城市的夜景在雨后显得格外明亮。",
    "由于原材料价格上涨，工厂不得不提高产品售价。",
    "图书馆周一闭馆，其余时间早上八点开门。",
    "小猫蜷缩在窗台上晒太阳。",
    "这款软件的新版本修复了几个严重的安全漏洞。",
    "他的意思是我们应该早点出发，避开高峰。",
    "研究人员发现，充足的睡眠有助于提高记忆力。",
    "外卖小哥冒着大雨把饭菜准时送到了。",
    "博物馆里展出了一批珍贵的青铜器。",
    "这次比赛的冠军是一位只有十六岁的选手。",
    "请在下周五之前提交项目的最终报告。",
]


def chinese_texts(n: int, min_chars: int = 4, max_chars: int = 150, seed: int = 0) -> list[str]:
    """n texts whose lengths are spread evenly between min_chars and max_chars characters.

    With e5's vocabulary that is about 5-120 tokens per text (prefix and specials included).
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        target = rng.randint(min_chars, max_chars)
        text = ""
        while len(text) < target:
            text += rng.choice(SENTENCES)
        texts.append(text[:target])
    return texts


async def concurrent_callers(
    items: list, concurrency: int, call: Callable[[object], Awaitable[object]]
) -> tuple[float, list[float]]:
    """`concurrency` tasks take items from one queue and `await call(item)` one at a time;
    the wall time of it all and each call's latency."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    latencies: list[float] = []

    async def caller() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            start = time.perf_counter()
            await call(item)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def at_once(call: Callable[[], object], n: int = 12) -> list[object]:
    """`call` made from n threads at the same moment: what each returned or raised. The
    tests' way to meet an engine's queue limit: a request over it alone runs in parts."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Barrier(n)

    def one(_: int) -> object:
        start.wait()
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - the caller sorts what came back
            return err

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))
