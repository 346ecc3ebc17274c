/**
 * Names kvmlab gives to objects on hosts: `shortId` and `deviceName` (see core/names.ts, the one
 * definition every layer uses).
 */
export { shortId, deviceName } from "../../core/names";
