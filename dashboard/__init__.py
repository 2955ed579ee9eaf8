"""The operator's dashboard: server-rendered pages over the queue, mounted at `/admin`.

It reads the queue through the BullMQ port's public getters and slackq's own key layouts (the job
index, the worker's effect records and pacing holds), and imports nothing from the web app or the
worker. See docs/dashboard.md.
"""
