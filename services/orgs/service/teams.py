"""Teams: CRUD and membership. A team's members must be members of its org."""

from __future__ import annotations

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from libs.common.errors import Conflict, InvalidInput, NotFound
from libs.common.events import Transaction
from libs.common.identity import Principal
from libs.common.timestamps import utcnow
from services.orgs.models import Team, TeamMember
from services.orgs.service.base import Page, ServiceBase, oid, page_of
from services.orgs.service.rules import Op, authorize


class TeamOps(ServiceBase):
    @staticmethod
    async def _team(
        org_id: PydanticObjectId | None, team_id: str, tx: Transaction | None = None
    ) -> Team:
        team = await Team.find_one(
            {"_id": oid(team_id, "team"), "org_id": org_id},
            session=tx.session if tx else None,
        )
        if team is None:
            raise NotFound("no such team")
        return team

    @staticmethod
    async def member_counts(team_ids: list[PydanticObjectId]) -> dict[PydanticObjectId, int]:
        rows = await TeamMember.get_pymongo_collection().aggregate(
            [
                {"$match": {"team_id": {"$in": team_ids}}},
                {"$group": {"_id": "$team_id", "n": {"$sum": 1}}},
            ]
        )
        return {row["_id"]: row["n"] async for row in rows}

    async def create_team(self, *, caller: Principal, org_id: str, name: str) -> Team:
        """A new team (admins); names are unique within an org (409)."""
        await self.require(caller, org_id, Op.CREATE_TEAM)

        async def body(tx: Transaction) -> Team:
            org = await self.lock_org(oid(org_id), tx)
            authorize(await self.membership(org.id, caller.id, tx.session), Op.CREATE_TEAM)
            team = Team(org_id=org.id, name=name)
            await team.insert(session=tx.session)
            tx.emit("team.created", {"org_id": org_id, "team_id": str(team.id), "name": name})
            return team

        try:
            return await self.atomic(body)
        except DuplicateKeyError:
            raise Conflict("a team with this name exists in this org") from None

    async def list_teams(
        self, *, caller: Principal, org_id: str, limit: int, after: str | None
    ) -> Page[tuple[Team, int]]:
        """The org's teams with their member counts."""
        me = await self.require(caller, org_id, Op.LIST_TEAMS)
        teams = await page_of(Team, {"org_id": me.org_id}, limit=limit, after=after)
        counts = await self.member_counts([t.id for t in teams.items if t.id is not None])
        return Page([(t, counts.get(t.id, 0)) for t in teams.items if t.id], teams.next_after)

    async def get_team(self, *, caller: Principal, org_id: str, team_id: str) -> tuple[Team, int]:
        me = await self.require(caller, org_id, Op.READ_TEAM)
        team = await self._team(me.org_id, team_id)
        counts = await self.member_counts([team.id] if team.id else [])
        return team, counts.get(team.id, 0) if team.id else 0

    async def update_team(
        self, *, caller: Principal, org_id: str, team_id: str, name: str
    ) -> tuple[Team, int]:
        """Rename a team (admins)."""
        await self.require(caller, org_id, Op.UPDATE_TEAM)

        async def body(tx: Transaction) -> Team:
            org = await self.lock_org(oid(org_id), tx)
            authorize(await self.membership(org.id, caller.id, tx.session), Op.UPDATE_TEAM)
            team = await self._team(org.id, team_id, tx)
            if team.name != name:
                changes = {"name": name, "updated_at": utcnow()}
                await Team.get_pymongo_collection().update_one(
                    {"_id": team.id}, {"$set": changes}, session=tx.session
                )
                team = team.model_copy(update=changes)
            return team

        try:
            team = await self.atomic(body)
        except DuplicateKeyError:
            raise Conflict("a team with this name exists in this org") from None
        counts = await self.member_counts([team.id] if team.id else [])
        return team, counts.get(team.id, 0) if team.id else 0

    async def delete_team(self, *, caller: Principal, org_id: str, team_id: str) -> None:
        """Delete a team and its memberships (admins)."""
        await self.require(caller, org_id, Op.DELETE_TEAM)

        async def body(tx: Transaction) -> None:
            org = await self.lock_org(oid(org_id), tx)
            authorize(await self.membership(org.id, caller.id, tx.session), Op.DELETE_TEAM)
            team = await self._team(org.id, team_id, tx)
            await TeamMember.get_pymongo_collection().delete_many(
                {"team_id": team.id}, session=tx.session
            )
            await Team.get_pymongo_collection().delete_one({"_id": team.id}, session=tx.session)
            tx.emit("team.deleted", {"org_id": org_id, "team_id": str(team.id)})

        await self.atomic(body)

    async def list_team_members(
        self, *, caller: Principal, org_id: str, team_id: str, limit: int, after: str | None
    ) -> Page[TeamMember]:
        me = await self.require(caller, org_id, Op.READ_TEAM)
        team = await self._team(me.org_id, team_id)
        return await page_of(TeamMember, {"team_id": team.id}, limit=limit, after=after)

    async def add_team_member(
        self, *, caller: Principal, org_id: str, team_id: str, user_id: str
    ) -> None:
        """Put an org member in a team (admins; idempotent). A non-member is a 422."""
        await self.require(caller, org_id, Op.MANAGE_TEAM_MEMBERS)

        async def body(tx: Transaction) -> None:
            # The org lock also orders this against a concurrent removal of the member.
            org = await self.lock_org(oid(org_id), tx)
            authorize(await self.membership(org.id, caller.id, tx.session), Op.MANAGE_TEAM_MEMBERS)
            team = await self._team(org.id, team_id, tx)
            if await self.membership(org.id, user_id, tx.session) is None:
                raise InvalidInput(
                    "only members of the org can join its teams",
                    errors=[{"field": "user_id", "message": "not a member of this org"}],
                )
            await TeamMember.get_pymongo_collection().update_one(
                {"team_id": team.id, "user_id": user_id},
                {
                    "$setOnInsert": {
                        "org_id": org.id,
                        "added_at": utcnow(),
                    }
                },
                upsert=True,
                session=tx.session,
            )

        await self.atomic(body)

    async def remove_team_member(
        self, *, caller: Principal, org_id: str, team_id: str, user_id: str
    ) -> None:
        """Take a user out of a team (admins; idempotent)."""
        await self.require(caller, org_id, Op.MANAGE_TEAM_MEMBERS)

        async def body(tx: Transaction) -> None:
            org = await self.lock_org(oid(org_id), tx)
            authorize(await self.membership(org.id, caller.id, tx.session), Op.MANAGE_TEAM_MEMBERS)
            team = await self._team(org.id, team_id, tx)
            await TeamMember.get_pymongo_collection().delete_one(
                {"team_id": team.id, "user_id": user_id}, session=tx.session
            )

        await self.atomic(body)
